from vlgraft.data.formats import easyvqa  # noqa: F401
