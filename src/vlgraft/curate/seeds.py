"""Few-shot seeds per kind and the evolving 3-of-4 example pool (TOMGPT).

LLaVA's three kinds of instruction data: ``conversation`` (several questions and answers about the
image), ``detail`` (one thorough description) and ``reasoning`` (one question whose answer needs a
step of inference beyond what is visible). The generator never sees the image, only its annotation
(the text that :func:`vlgraft.curate.annotation.extract` writes); the system prompt asks it to write
as if it saw the picture. Each kind starts with four hand-written examples (annotation -> output),
written for this project.

TOMGPT's trick: each kind keeps a pool of its current four examples; every prompt shows three of
them, drawn at random in random order, so consecutive prompts differ and the generator does not
lock onto one example's wording. A generation that passes every filter may replace the pool's
oldest member (with probability ``update``), so the pool drifts from the hand-written seeds
towards the data set's own annotations. All draws come from a seeded RNG per (record, kind), so a
run (and a resumed run) is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

KINDS = ("conversation", "detail", "reasoning")
POOL_SIZE = 4
SHOTS = 3


@dataclass(frozen=True)
class Example:
    annotation: str
    output: str


_BASE = ("You write training data for a model that looks at images. You are shown the annotation of one "
         "image (its name, category, captions or questions with answers) but write as if you were looking "
         "at the picture itself. Never mention the annotation, captions or labels. Use only facts that "
         "the annotation gives; do not invent details it does not support. ")

SYSTEM = {
    "conversation": _BASE + ("Write a short conversation about the image: two to four questions a person "
                             "might ask, each on a line starting with 'Q:', each followed by the answer on a "
                             "line starting with 'A:'."),
    "detail": _BASE + "Write a detailed description of the image in three to five sentences.",
    "reasoning": _BASE + ("Write one question about the image that needs a step of reasoning to answer, on a "
                          "line starting with 'Q:', then the answer with its reasoning on a line starting "
                          "with 'A:'."),
}

REFINE_SYSTEM = ("You correct training data written about an image. You get the image's annotation and a text "
                 "written about it. Return the text with errors fixed: remove repetition, anything that the "
                 "annotation does not support and anything unrelated to the image; keep it short. Keep the "
                 "same layout (keep the 'Q:' and 'A:' lines if there are any). Return only the corrected text.")

DETAIL_INSTRUCTIONS = (
    "Describe this image in detail.",
    "What do you see in this picture? Describe it thoroughly.",
    "Give a detailed account of what the image shows.",
    "Walk me through everything visible in this image.",
    "Write a careful description of this picture.",
    "Tell me about this image in as much detail as you can.",
)

_A_SHAPES = ("Q: What shape is in the image? A: triangle\nQ: What color is the shape? A: green\n"
             "Q: Is there a blue shape? A: no")
_A_EMOJI = ("Name: smiling face with sunglasses\nAlso called: sunglasses, cool\n"
            "Category: Smileys & Emotion / face-glasses\nCaption: a yellow smiling face wearing dark sunglasses")
_A_PHOTO = ("Caption: a man in a yellow raincoat rides a bicycle down a wet street\n"
            "Caption: a cyclist passes a row of parked cars in the rain")
_A_OBJECT = ("Name: teapot\nCategory: Objects / kitchenware\nQ: What is the object made of? A: porcelain\n"
             "Q: Is it on a table? A: yes")

SEEDS: dict[str, list[Example]] = {
    "conversation": [
        Example(_A_SHAPES, "Q: What shape do you see in the picture?\nA: There is a single triangle.\n"
                           "Q: What color is the triangle?\nA: The triangle is green.\n"
                           "Q: Is anything in the picture blue?\nA: No, nothing is blue; the only shape is green."),
        Example(_A_EMOJI, "Q: What does this emoji show?\nA: It shows a yellow smiling face wearing dark sunglasses.\n"
                          "Q: What mood does it suggest?\nA: It looks relaxed and confident, the kind of face "
                          "people use to say that something is cool."),
        Example(_A_PHOTO, "Q: What is the man doing?\nA: He is riding a bicycle down the street.\n"
                          "Q: What is the weather like?\nA: It is raining; the street is wet and he wears a raincoat.\n"
                          "Q: What is next to him?\nA: A row of parked cars lines the street."),
        Example(_A_OBJECT, "Q: What object is this?\nA: It is a teapot.\nQ: What is it made of?\n"
                           "A: It is made of porcelain.\nQ: Where is it standing?\nA: It stands on a table."),
    ],
    "detail": [
        Example(_A_SHAPES, "The image shows one shape, a green triangle, drawn on a plain background. The triangle "
                           "is the only object in the picture. There is nothing blue anywhere in it."),
        Example(_A_EMOJI, "This is an emoji of a round yellow face with a wide smile. The face wears a pair of dark "
                          "sunglasses that cover its eyes. The expression is relaxed and self-assured, the usual way "
                          "to say that something is cool."),
        Example(_A_PHOTO, "A man in a bright yellow raincoat rides a bicycle down a city street in the rain. The road "
                          "is wet and shiny. Cars are parked in a row along the side of the street as he passes them."),
        Example(_A_OBJECT, "The picture shows a porcelain teapot standing on a table. It has a rounded body, a spout "
                           "and a handle. Nothing else stands out in the scene."),
    ],
    "reasoning": [
        Example(_A_SHAPES, "Q: If you wanted to draw a second shape of the same color, which crayon would you pick?\n"
                           "A: The triangle in the picture is green, so you would pick the green crayon to match it."),
        Example(_A_EMOJI, "Q: When would someone send this emoji?\nA: The face wears sunglasses and smiles calmly, "
                          "which reads as cool and confident, so people send it when they are pleased with "
                          "themselves or want to say that something is cool."),
        Example(_A_PHOTO, "Q: Why is the man wearing a raincoat?\nA: The street is wet and it is raining, so he wears "
                          "a raincoat to stay dry while he rides his bicycle."),
        Example(_A_OBJECT, "Q: What would you use this object for?\nA: It is a teapot, so it is used to brew tea and "
                           "pour it into cups."),
    ],
}


class SeedPool:
    """The current ``POOL_SIZE`` examples of one kind; :meth:`sample` draws the ``SHOTS`` shown in a prompt."""

    def __init__(self, examples: list[Example], update: float = 0.25):
        if len(examples) < SHOTS:
            raise ValueError(f"a seed pool needs at least {SHOTS} examples")
        self.examples = list(examples)
        self.update = update

    def sample(self, rng: random.Random) -> list[Example]:
        return rng.sample(self.examples, SHOTS)

    def offer(self, example: Example, rng: random.Random) -> bool:
        """A kept generation replaces the oldest member with probability ``update``."""
        if rng.random() >= self.update:
            return False
        self.examples = self.examples[1:] + [example]
        return True

    def to_json(self) -> list[dict]:
        return [asdict(e) for e in self.examples]

    @classmethod
    def from_json(cls, data: list[dict], update: float) -> SeedPool:
        return cls([Example(**d) for d in data], update)


def messages(kind: str, annotation: str, shots: list[Example]) -> list[dict]:
    """Chat messages: the kind's system prompt, the shots as user/assistant pairs, then the annotation."""
    msgs = [{"role": "system", "content": SYSTEM[kind]}]
    for ex in shots:
        msgs += [{"role": "user", "content": ex.annotation}, {"role": "assistant", "content": ex.output}]
    return msgs + [{"role": "user", "content": annotation}]


def refine_messages(annotation: str, text: str) -> list[dict]:
    """MiniGPT-4's second pass: ask the generator to correct its own output."""
    return [{"role": "system", "content": REFINE_SYSTEM},
            {"role": "user", "content": f"Annotation:\n{annotation}\n\nText:\n{text}"}]
