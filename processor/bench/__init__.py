"""``processor bench``: the pipeline against plain loops on the same data. A lab: no runtime code imports it."""
