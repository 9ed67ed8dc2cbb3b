"""One config file per experiment of chapter 6, named after network3's conv.py functions."""
