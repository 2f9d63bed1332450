"""The word tables the demo data is drawn from (countries and capitals, antonyms, units,
names, ...), and the small helpers that keep generated text grammatical.

Why its own module: the pool's skill generators and the targets' generators
(``demo_skills``) draw from the same tables, and tests check the tables themselves (every
answer must be right), so they live apart from the code that uses them.
"""

from __future__ import annotations


def pairs(text: str) -> dict[str, str]:
    """Parse ``"a:b,c:d"`` into a dict: keeps the word tables compact and readable."""
    return dict(item.split(":") for item in text.split(","))


CAPITALS = pairs(
    "France:Paris,Germany:Berlin,Italy:Rome,Spain:Madrid,Portugal:Lisbon,Japan:Tokyo,"
    "China:Beijing,India:New Delhi,Canada:Ottawa,Australia:Canberra,Brazil:Brasilia,"
    "Argentina:Buenos Aires,Mexico:Mexico City,Egypt:Cairo,Kenya:Nairobi,Nigeria:Abuja,"
    "Russia:Moscow,Turkey:Ankara,Greece:Athens,Norway:Oslo,Sweden:Stockholm,"
    "Finland:Helsinki,Denmark:Copenhagen,Poland:Warsaw,Austria:Vienna,Ireland:Dublin,"
    "Peru:Lima,Chile:Santiago,Colombia:Bogota,Thailand:Bangkok,Vietnam:Hanoi,"
    "South Korea:Seoul,Iran:Tehran,Iraq:Baghdad,Morocco:Rabat,Ghana:Accra,"
    "Ethiopia:Addis Ababa,Hungary:Budapest,Cuba:Havana,Iceland:Reykjavik,"
    "Pakistan:Islamabad,Belgium:Brussels,New Zealand:Wellington,Ukraine:Kyiv,"
    "Romania:Bucharest,Bulgaria:Sofia,Croatia:Zagreb,Serbia:Belgrade,Uruguay:Montevideo,"
    "Venezuela:Caracas,Nepal:Kathmandu,Bangladesh:Dhaka,Saudi Arabia:Riyadh"
)
ANTONYMS = pairs(
    "hot:cold,big:small,up:down,early:late,happy:sad,fast:slow,young:old,full:empty,"
    "high:low,strong:weak,wet:dry,rich:poor,loud:quiet,thick:thin,win:lose,push:pull,"
    "buy:sell,inside:outside,above:below,first:last,true:false,open:closed,day:night,"
    "clean:dirty,heavy:light,easy:hard,begin:end,love:hate,question:answer,north:south"
)
SYNONYMS = pairs(
    "big:large,small:little,fast:quick,happy:glad,begin:start,smart:clever,"
    "angry:mad,easy:simple,shut:close,buy:purchase,help:assist,rich:wealthy,"
    "hard:difficult,end:finish,choose:pick,gift:present,sick:ill,quiet:silent"
)
FRENCH = pairs(
    "cat:chat,dog:chien,house:maison,water:eau,bread:pain,book:livre,apple:pomme,"
    "tree:arbre,sun:soleil,moon:lune,car:voiture,sea:mer,red:rouge,green:vert,blue:bleu,"
    "black:noir,white:blanc,milk:lait,cheese:fromage,door:porte,hand:main,day:jour,"
    "night:nuit,city:ville,flower:fleur,horse:cheval,fish:poisson,chair:chaise,sky:ciel,"
    "girl:fille,rain:pluie,snow:neige,bird:oiseau,mouse:souris,wine:vin"
)
UNITS = [  # (plural, singular, target unit, exact factor)
    ("kilometers", "kilometer", "meters", 1000),
    ("meters", "meter", "centimeters", 100),
    ("kilograms", "kilogram", "grams", 1000),
    ("liters", "liter", "milliliters", 1000),
    ("hours", "hour", "minutes", 60),
    ("minutes", "minute", "seconds", 60),
    ("days", "day", "hours", 24),
    ("weeks", "week", "days", 7),
    ("feet", "foot", "inches", 12),
    ("yards", "yard", "feet", 3),
]
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
NAMES = "Tom Anna Li Maria Sam Priya Omar Lucy Ben Sara Kofi Elena".split()
ITEMS = "apples pencils stickers cookies marbles books coins cards shells stamps".split()
WORDS = (
    "apple garden window planet rocket yellow guitar pencil bridge candle forest island "
    "monkey orange silver tomato winter button castle dragon"
).split()
POSITIVE = "wonderful excellent delightful great fantastic lovely superb".split()
NEGATIVE = "terrible awful boring disappointing dreadful poor dull".split()
SUBJECTS = [
    "The movie", "This phone", "The hotel room", "The pasta", "The concert",
    "This book", "The service", "The new album",
]  # fmt: skip
TAILS = {
    "positive": ["I would happily recommend it.", "I will come back again.", ""],
    "negative": ["I want my money back.", "I would not recommend it.", ""],
}
GREETINGS = ["Hi!", "Hello there.", "Hey!", "Good morning!", "Good evening."]
ASKS = [
    "How are you today?", "How is your day going?", "What's up?", "Are you doing well?",
]  # fmt: skip
REPLIES = [
    "I'm doing well, thank you for asking! How can I help you today?",
    "All good here, thanks! What would you like to talk about?",
    "Hello! I'm happy to chat. Is there anything on your mind?",
]
TIPS = {
    "sleeping better": "Try going to bed at the same time every night and keep screens "
    "out of the bedroom.",
    "staying focused": "Work in short blocks of 25 minutes and put your phone in another room.",
    "drinking more water": "Keep a bottle on your desk and refill it every time it is empty.",
    "keeping my desk tidy": "Spend two minutes clearing it at the end of each day.",
    "waking up early": "Move your alarm a little earlier each week and get daylight soon "
    "after waking.",
    "reading more books": "Carry a book with you and read a few pages whenever you wait.",
    "saving money": "Write down what you spend for a month to see where it goes.",
    "learning to cook": "Start with three simple recipes and cook each one a few times.",
    "making friends in a new city": "Join a club or class that meets every week.",
    "staying calm before an exam": "Breathe slowly, sleep well the night before and arrive early.",
    "writing emails": "Put the request in the first sentence and keep it short.",
    "running a first race": "Start slower than you think you should and enjoy it.",
}
THINGS = (
    "rainy days,long walks,board games,jazz music,gardening,road trips,winter,"
    "camping,spicy food,old movies,museums,early mornings"
).split(",")
OPINIONS = [
    "Many people love {thing}, and others do not. It really comes down to personal "
    "taste. What do you enjoy about it?",
    "I think {thing} can be a lot of fun, especially with good company. Do you have "
    "a favorite memory about it?",
]
EVENTS = (
    "finished a long week at work,adopted a puppy,moved to a new apartment,"
    "started a new hobby,came back from a holiday,baked my first loaf of bread,"
    "ran my first 5k,planted some tomatoes,got a new job,painted my kitchen,"
    "learned to ride a bike,finished reading a big novel"
).split(",")


def plural(n: int, word: str) -> str:
    """``1 day`` / ``3 days``: grammatical text keeps the demo's model on-distribution."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
