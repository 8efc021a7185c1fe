"""Writes the small English corpus and the finetuning datasets shipped in `examples/data/` (deterministic).

The text is encyclopedia-style paragraphs about invented towns, people, rivers and animals, composed from templates
with real English words; every paragraph records where each fact it states lies in it, so that the questions asked
about it have exact answer spans. Re-run with `python examples/data/make_data.py`: it rewrites the same files.

Files (JSON lines unless said otherwise):
    corpus.txt            one paragraph a line, for pretraining (the paragraphs of the held-out QA split excluded)
    qa_train.jsonl        SQuAD-style extractive QA: id, title, context, question, answers {text, answer_start}
    qa_eval.jsonl         the same, on paragraphs that are not in qa_train.jsonl nor in corpus.txt
    topics_*.jsonl        sequence classification: text, label (town / person / river / animal)
    entities_*.jsonl      token classification: tokens, tags (O, B-/I- PER, LOC, NUM)
"""

import json
import random
from pathlib import Path


HERE = Path(__file__).resolve().parent

PLACE_HEADS = "Ash Brook Elm Oak Stone Mill Holly Thorn Wolf Fair Red Black White Green Kings Marsh Long High Bram Wyn"
PLACE_TAILS = "ford field bury ton wick ham mere dale port bridge stead moor haven cliff worth by combe ley well gate"
FIRST_NAMES = (
    "Edwin Alice Thomas Margaret Henry Eleanor Walter Agnes Hugh Matilda Arthur Beatrice Oliver Clara Robert Edith "
    "Samuel Harriet George Lydia Frederick Rose Albert Ada Stephen Florence"
)
LAST_NAMES = (
    "Hale Carter Whitlock Thornton Ashby Mercer Fletcher Langley Pryce Holloway Kemp Rowe Sutton Barlow Ingram Marsh "
    "Dunmore Fairley Garrow Hartwell Lovell Nash Osgood Pembridge Quarles Radley"
)
REGIONS = "north south east west centre".split()
COUNTRIES = "Ardenia Belmark Corvania Dunholm Elsmere Farland Galloway Hestria".split()
INDUSTRIES = [
    "wool and weaving",
    "fishing and boat building",
    "coal mining",
    "the making of glass",
    "brewing and malting",
    "the trade in salt",
    "paper milling",
    "the growing of apples",
    "shipbuilding",
    "the quarrying of slate",
]
LANDMARKS = [
    "a stone bridge of nine arches",
    "a cathedral with a copper spire",
    "a clock tower built of red brick",
    "a ruined castle on a chalk hill",
    "a covered market hall",
    "a lighthouse painted white and green",
    "a botanical garden with a glass house",
    "an old windmill that still grinds flour",
]
PROFESSIONS = "botanist painter engineer composer astronomer architect poet surgeon geologist chemist".split()
WORKS = [
    "The Winter Garden",
    "A Study of Mosses",
    "The Lantern Bridge",
    "Songs of the Lowlands",
    "The Silent Orbit",
    "On the Flow of Water",
    "The Glass Cathedral",
    "Letters from the Coast",
    "The Salt Road",
    "A Map of Small Stars",
]
MOUNTAINS = "the Grey Mountains|the Harrow Hills|the Pennant Range|the Blue Fells|the Cold Peaks|the Iron Downs".split(
    "|"
)
SEAS = "the Northern Sea|the Amber Sea|the Gulf of Wren|the Western Ocean|the Bay of Larks|the Narrow Sea".split("|")
COLOURS = "grey brown spotted golden black red pale green striped silver".split()
HABITATS_ADJ = "marsh river forest mountain meadow coastal desert lake".split()
ANIMALS = {
    "heron": "bird",
    "owl": "bird",
    "finch": "bird",
    "vole": "mammal",
    "hare": "mammal",
    "otter": "mammal",
    "lizard": "reptile",
    "toad": "amphibian",
    "beetle": "insect",
    "moth": "insect",
}
HABITATS = [
    "reed beds and shallow lakes",
    "old oak forests",
    "high rocky slopes",
    "wet meadows near rivers",
    "sand dunes along the coast",
    "dry heathland",
    "the banks of slow rivers",
]
DIETS = ["small fish", "seeds and berries", "insects and worms", "roots and grasses", "snails", "frogs and newts"]


class Paragraph:
    """Builds a paragraph sentence by sentence, remembering where each fact's text lies."""

    def __init__(self):
        self.text = ""
        self.facts = {}
        self.mentions = []

    def add(self, template, **slots):
        """`template` uses {slot} fields; the character offset of every slot value in the paragraph is recorded."""
        if self.text:
            self.text += " "
        pos = 0
        while pos < len(template):
            start = template.find("{", pos)
            if start < 0:
                self.text += template[pos:]
                break
            end = template.index("}", start)
            self.text += template[pos:start]
            name = template[start + 1 : end]
            self.facts.setdefault(name, (str(slots[name]), len(self.text)))
            self.mentions.append((name, len(self.text), len(self.text) + len(str(slots[name]))))
            self.text += str(slots[name])
            pos = end + 1


def place_name(rng):
    return rng.choice(PLACE_HEADS.split()) + rng.choice(PLACE_TAILS.split())


def person_name(rng):
    return f"{rng.choice(FIRST_NAMES.split())} {rng.choice(LAST_NAMES.split())}"


def town(rng):
    s = {
        "name": place_name(rng),
        "region": rng.choice(REGIONS),
        "country": rng.choice(COUNTRIES),
        "year": rng.randint(900, 1850),
        "founder": person_name(rng),
        "river": place_name(rng),
        "population": f"{rng.randint(2, 95)},{rng.randint(0, 999):03d}",
        "industry": rng.choice(INDUSTRIES),
        "landmark": rng.choice(LANDMARKS),
    }
    p = Paragraph()
    p.add(rng.choice(["{name} is a town in the {region} of {country}.", "{name} is a market town in {country}."]), **s)
    sentences = [
        rng.choice(["It was founded in {year} by {founder}.", "The town was founded by {founder} in {year}."]),
        rng.choice(["It lies on the River {river}.", "The River {river} flows through the town."]),
        rng.choice(["It has a population of about {population}.", "About {population} people live there."]),
        rng.choice(["Its economy was long based on {industry}.", "The town grew rich from {industry}."]),
        rng.choice(["It is known for {landmark}.", "Visitors come to see {landmark}."]),
    ]
    rng.shuffle(sentences)
    for sentence in sentences:
        p.add(sentence, **s)
    n = s["name"]
    questions = {
        "country": [f"In which country is {n}?", f"{n} is a town in which country?"],
        "year": [f"When was {n} founded?", f"In what year was {n} founded?"],
        "founder": [f"Who founded {n}?", f"By whom was {n} founded?"],
        "river": [f"On which river does {n} lie?", f"Which river flows through {n}?"],
        "population": [f"What is the population of {n}?", f"How many people live in {n}?"],
        "industry": [f"What was the economy of {n} based on?", f"What made {n} rich?"],
        "landmark": [f"What is {n} known for?", f"What do visitors come to {n} to see?"],
    }
    return "town", p, questions


def person(rng):
    born = rng.randint(1600, 1950)
    s = {
        "name": person_name(rng),
        "profession": rng.choice(PROFESSIONS),
        "born": born,
        "died": born + rng.randint(30, 90),
        "birthplace": place_name(rng),
        "university": place_name(rng),
        "work": rng.choice(WORKS),
        "spouse": person_name(rng),
    }
    p = Paragraph()
    p.add(rng.choice(["{name} was a {profession} from {birthplace}.", "{name} was a famous {profession}."]), **s)
    sentences = [
        rng.choice(
            ["{name} was born in {born} and died in {died}.", "Born in {born}, the {profession} died in {died}."]
        ),
        rng.choice(["{name} studied at the University of {university}.", "After school came years at {university}."]),
        rng.choice(["The best known work is {work}.", "Critics still praise {work}."]),
        rng.choice(["In later life {name} married {spouse}.", "{spouse} became a partner in marriage and work."]),
    ]
    rng.shuffle(sentences)
    for sentence in sentences:
        p.add(sentence, **s)
    n = s["name"]
    questions = {
        "profession": [f"What was the profession of {n}?", f"What kind of work did {n} do?"],
        "born": [f"When was {n} born?", f"In what year was {n} born?"],
        "died": [f"When did {n} die?", f"In what year did {n} die?"],
        "university": [f"Where did {n} study?", f"At which university did {n} study?"],
        "work": [f"What is the best known work of {n}?", f"Which work of {n} is most famous?"],
        "spouse": [f"Whom did {n} marry?", f"Who was the spouse of {n}?"],
    }
    if "birthplace" in p.facts:
        questions["birthplace"] = [f"Where was {n} from?", f"What town did {n} come from?"]
    return "person", p, questions


def river(rng):
    s = {
        "name": place_name(rng),
        "length": rng.randint(40, 900),
        "source": rng.choice(MOUNTAINS),
        "mouth": rng.choice(SEAS),
        "town": place_name(rng),
        "tributary": place_name(rng),
        "fish": rng.choice(["salmon", "trout", "pike", "eels", "perch"]),
    }
    p = Paragraph()
    p.add("The River {name} is a river of {length} kilometres.", **s)
    sentences = [
        rng.choice(["It rises in {source}.", "Its source lies in {source}."]),
        rng.choice(["It flows into {mouth}.", "Its mouth opens onto {mouth}."]),
        rng.choice(["The largest town on its banks is {town}.", "It passes through the town of {town}."]),
        rng.choice(["Its main tributary is the {tributary}.", "The {tributary} joins it from the left."]),
        rng.choice(["Its waters are rich in {fish}.", "Anglers fish it for {fish}."]),
    ]
    rng.shuffle(sentences)
    for sentence in sentences:
        p.add(sentence, **s)
    n = s["name"]
    questions = {
        "length": [f"How long is the River {n} in kilometres?", f"What is the length in kilometres of the {n}?"],
        "source": [f"Where does the River {n} rise?", f"Where is the source of the {n}?"],
        "mouth": [f"Into which sea does the River {n} flow?", f"Where does the {n} end?"],
        "town": [f"Which town lies on the River {n}?", f"What town does the {n} pass through?"],
        "tributary": [f"What is the main tributary of the River {n}?", f"Which river joins the {n}?"],
        "fish": [f"What fish live in the River {n}?", f"What do anglers catch in the {n}?"],
    }
    return "river", p, questions


def animal(rng):
    kind = rng.choice(sorted(ANIMALS))
    s = {
        "name": f"{rng.choice(COLOURS)} {rng.choice(HABITATS_ADJ)} {kind}",
        "group": ANIMALS[kind],
        "habitat": rng.choice(HABITATS),
        "country": rng.choice(COUNTRIES),
        "diet": rng.choice(DIETS),
        "lifespan": rng.randint(2, 25),
        "discoverer": person_name(rng),
    }
    p = Paragraph()
    p.add("The {name} is a {group} found in {country}.", **s)
    sentences = [
        rng.choice(["It lives in {habitat}.", "Its home is {habitat}."]),
        rng.choice(["It feeds mainly on {diet}.", "Its diet consists of {diet}."]),
        rng.choice(["It can live for {lifespan} years.", "Its lifespan is about {lifespan} years."]),
        rng.choice(["It was first described by {discoverer}.", "{discoverer} was the first to describe it."]),
    ]
    rng.shuffle(sentences)
    for sentence in sentences:
        p.add(sentence, **s)
    n = s["name"]
    questions = {
        "group": [f"What kind of animal is the {n}?"],
        "country": [f"In which country is the {n} found?", f"Where is the {n} found?"],
        "habitat": [f"Where does the {n} live?", f"What is the habitat of the {n}?"],
        "diet": [f"What does the {n} eat?", f"What does the {n} feed on?"],
        "lifespan": [f"How many years can the {n} live?", f"What is the lifespan in years of the {n}?"],
        "discoverer": [f"Who first described the {n}?", f"Who was the first to describe the {n}?"],
    }
    return "animal", p, questions


BUILDERS = [town, person, river, animal]
ENTITY_FACTS = {"name": "PER", "founder": "PER", "spouse": "PER", "discoverer": "PER", "year": "NUM", "born": "NUM"}
ENTITY_FACTS.update(died="NUM", length="NUM", lifespan="NUM", population="NUM", country="LOC", river="LOC")
ENTITY_FACTS.update(birthplace="LOC", university="LOC", town="LOC", tributary="LOC")


def entity_tags(topic, paragraph):
    """Word-level BIO tags of a paragraph: people (PER), places (LOC) and numbers (NUM)."""
    spans = []
    for fact, start, end in paragraph.mentions:
        label = "LOC" if topic in ("town", "river") and fact == "name" else ENTITY_FACTS.get(fact)
        if label and not (topic == "animal" and fact == "name"):
            spans.append((start, end, label))
    tokens, tags, pos = [], [], 0
    for word in paragraph.text.split(" "):
        core = word.rstrip(".,")
        for piece in (core, word[len(core) :]):
            if piece:
                label = next((lab for s, e, lab in spans if s <= pos < e), None)
                inside = label and any(s < pos < e for s, e, lab in spans)
                tokens.append(piece)
                tags.append("O" if label is None else ("I-" if inside else "B-") + label)
            pos += len(piece)
        pos += 1
    return tokens, tags


def main(num_paragraphs=1400, num_eval_paragraphs=100, seed=0):
    rng = random.Random(seed)
    paragraphs = [rng.choice(BUILDERS)(rng) for _ in range(num_paragraphs)]
    splits = {"train": paragraphs[num_eval_paragraphs:], "eval": paragraphs[:num_eval_paragraphs]}
    (HERE / "corpus.txt").write_text("\n".join(p.text for _, p, _ in splits["train"]) + "\n", encoding="utf-8")
    for split, items in splits.items():
        qa, topics, entities = [], [], []
        for i, (topic, p, questions) in enumerate(items):
            title = f"{split}-{i}"
            # Three questions a paragraph are plenty (and keep the files small).
            for fact in rng.sample(sorted(questions), k=min(3, len(questions))):
                text, start = p.facts[fact]
                assert p.text[start : start + len(text)] == text
                qa.append(
                    {
                        "id": f"{title}-{fact}",
                        "title": title,
                        "context": p.text,
                        "question": rng.choice(questions[fact]),
                        "answers": {"text": [text], "answer_start": [start]},
                    }
                )
            if i < 300:
                topics.append({"text": p.text, "label": topic})
                tokens, tags = entity_tags(topic, p)
                entities.append({"tokens": tokens, "tags": tags})
        if split == "train":
            qa = qa[:2000]
        for name, rows in (("qa", qa), ("topics", topics), ("entities", entities)):
            with open(HERE / f"{name}_{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
            print(f"{name}_{split}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    main()
