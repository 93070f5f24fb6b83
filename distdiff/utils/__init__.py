"""Leaf utilities every stage uses: atomic files, image decoding, the rules of numeric settings."""
