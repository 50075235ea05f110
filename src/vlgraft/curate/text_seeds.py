"""Hand-written seed instructions for ``vlgraft curate-text``: the generator is shown a few of them
and asked for a new one (Self-Instruct's bootstrap, with a fixed seed pool).

Plain English, text only (nothing about images, shapes or emoji), and none of them a near
duplicate of an item of the bundled text evaluation set (``tests/test_curate_text.py`` checks).
Kinds: explanations, how-to, short facts, rewriting, lists, arithmetic word problems, advice,
definitions, short writing tasks, comparisons.
"""

from __future__ import annotations

SEED_INSTRUCTIONS: tuple[str, ...] = (
    # explanations
    "Explain why the sky looks darker at night than during the day.",
    "Why does bread go stale when it is left out?",
    "Explain how a refrigerator keeps food cold.",
    "Why do people yawn?",
    "Explain in two sentences why we need to drink water.",
    "How does a compass help someone find their way?",
    "Why do boats float on water?",
    # how-to
    "How do I plant tomato seeds in a pot?",
    "Tell me how to wrap a present neatly.",
    "How can I remember new words in a foreign language?",
    "What are the steps to change a flat bicycle tyre?",
    "How do I write a polite email asking for a day off?",
    "How should I prepare for a long walk in the hills?",
    # short facts
    "How many sides does a hexagon have?",
    "Which ocean is the largest?",
    "What gas do humans breathe out?",
    "Which language has the most native speakers?",
    "Roughly how many teaspoons fit in a tablespoon?",
    "What is the boiling point of water in Fahrenheit?",
    "Which planet is known as the red planet?",
    # rewriting
    "Rewrite this sentence in the past tense: I walk to the market every morning.",
    "Make this sentence more formal: Hey, can you send me that report soon?",
    "Correct the spelling in this sentence: I recieved a letter from my freind.",
    "Rewrite this sentence so that it is shorter: In spite of the fact that it was raining, we went out.",
    "Turn this statement into a question: The museum opens at nine.",
    "Rewrite the following sentence in the passive voice: The chef cooked the soup.",
    # lists
    "List three things you should pack for a beach holiday.",
    "Name four animals that live in the desert.",
    "Give me five ideas for a rainy afternoon at home.",
    "List three ways to reduce waste in the kitchen.",
    "Name three jobs that involve working with children.",
    "List four fruits that are high in vitamin C.",
    # arithmetic word problems
    "A shop sells pencils for 20 cents each. How much do 6 pencils cost?",
    "A farmer packs 45 eggs into boxes of 6. How many full boxes does he get?",
    "A train travels 60 kilometres in one hour. How far does it travel in three hours?",
    "If a pizza is cut into 8 slices and 3 are eaten, how many slices remain?",
    "Sara saves 4 dollars a week. How much will she have saved after 9 weeks?",
    "A class has 28 students split into teams of 4. How many teams are there?",
    "A book costs 15 dollars and is on sale for one third off. What is the sale price?",
    # advice
    "What advice would you give to someone starting their first job?",
    "Suggest a way to stay focused while studying for an exam.",
    "How can I make a small bedroom feel less cluttered?",
    "Give one piece of advice for speaking in public.",
    "What should I consider before adopting a pet?",
    "Suggest a quick breakfast for a busy weekday.",
    # definitions
    "Define the word 'curious' in simple terms.",
    "What does the word 'recycle' mean?",
    "Why do mountain climbers carry extra oxygen on very high peaks?",
    "What is the meaning of the phrase 'break the ice'?",
    "What is an adjective? Give one example.",
    "What does a librarian do during a working day?",
    # short writing tasks
    "Write a two-line poem about the ocean.",
    "Write a short message congratulating a friend on a new baby.",
    "Write one sentence describing a busy train station.",
    "Write a short apology to a neighbour for a noisy party.",
    "Write a tweet announcing the opening of a new bakery.",
    # comparisons and classification
    "What is the difference between a lake and a river?",
    "Compare cats and dogs as pets in two sentences.",
    "Is a tomato a fruit or a vegetable? Explain briefly.",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
)
