"""less_lab: LESS data selection (Xia et al. 2024) by LoRA-gradient similarity."""

__version__ = "0.1.0"
