"""``vlgraft curate``: turn annotations into instruction-following conversations with an LLM (docs/CURATE.md).

``annotation`` (what the generator is told, what it must respect), ``seeds`` (few-shot pools),
``generators`` (local LLM, OpenAI-compatible endpoint), ``filters``, ``pipeline`` (the resumable
driver), ``cli`` (the subcommand).
"""
