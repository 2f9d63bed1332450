"""``less-lab`` prints known errors as plain lines and exits 2; ``--debug`` shows the
traceback. Bad input is caught before any model is loaded (these run in a second)."""

from __future__ import annotations

import gzip
import json

import pytest

from less_lab import cli
from less_lab.errors import ConfigError, DataError

GOOD = json.dumps({"id": "a", "messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a"}]})  # fmt: skip


def _run(tmp_path, capsys, *extra: str) -> tuple[int, str]:
    pool = tmp_path / "pool.jsonl"
    if not pool.exists():
        pool.write_text(GOOD + "\n{not json\n")
    argv = ["select", "--run-dir", str(tmp_path / "run"), "--pool", str(pool),
            "--target", f"t={tmp_path / 'targets.jsonl'}", *extra]  # fmt: skip
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_bad_pool_line_is_one_plain_line_naming_file_and_line(tmp_path, capsys):
    code, err = _run(tmp_path, capsys)
    assert code == 2
    assert f"{tmp_path / 'pool.jsonl'}:2: malformed JSON" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_bad_setting_names_the_key(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, "--set", "select.k=2.5")
    assert code == 2 and "select.k=2.5: expected a whole number" in err
    code, err = _run(tmp_path, capsys, "--set", "gradients.store_dtype=int8")
    assert code == 2 and "gradients.store_dtype='int8'" in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(DataError):
        _run(tmp_path, capsys, "--debug")
    with pytest.raises(ConfigError):
        _run(tmp_path, capsys, "--debug", "--set", "warmup.fraction=0")


def test_compressed_pool_files_are_read(tmp_path, capsys):
    folder = tmp_path / "pool"
    folder.mkdir()
    with gzip.open(folder / "part.jsonl.gz", "wt") as fh:
        fh.write(GOOD + "\n")
    from less_lab.data.pool import read_pool

    frame = read_pool(folder)
    assert frame["example_id"].to_list() == ["a"] and frame["source"].to_list() == ["part"]


def test_device_and_dtype_flags_reach_the_lab(tmp_path, monkeypatch):
    """``--device``/``--dtype`` on every stage command and on compare go to ``Lab``
    (default ``auto``/``float32``); a bad value is refused by argparse."""
    made = {}

    class Stop(Exception):
        pass

    def fake_lab(*args, **kw):
        made.update(kw)
        raise Stop

    monkeypatch.setattr(cli, "Lab", fake_lab)
    for command in (*cli.STAGES, "compare"):
        base = [command, "--run-dir", str(tmp_path), "--pool", "p", "--target", "t=x"]
        for extra, want in (
            ([], ("auto", "float32")),
            (["--device", "cpu", "--dtype", "bfloat16"], ("cpu", "bfloat16")),
        ):
            with pytest.raises(Stop):
                cli.main([*base, *extra])
            assert (made["device"], made["dtype"]) == want, command  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main(["warmup", "--run-dir", str(tmp_path), "--pool", "p", "--dtype", "int8"])


def test_plan_prints_the_memory_formula_for_a_7b_model(capsys):
    assert cli.main(["plan", "--set", "gradients.token_budget=8192"]) == 0
    out = capsys.readouterr().out
    peak = float(next(line for line in out.splitlines() if line.startswith("peak")).split()[2])
    assert 55 < peak < 65  # Llama-2-7B bf16, r=128, d=8192, T=8192: the documented 61.3 GB
    assert "activations" in out and "store (disk)" in out
