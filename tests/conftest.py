from hypothesis import settings

# Shared 2-core boxes: a slow first example is load, not a bug.
settings.register_profile("serverlab", deadline=None, max_examples=60)
settings.load_profile("serverlab")
