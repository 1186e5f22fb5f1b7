"""``processor chaos``: faults under load, with a verdict. A lab: no runtime code imports it."""
