"""A module that fails while importing (not a test module): the loader must say so in one line."""

raise RuntimeError("this module is broken on purpose")
