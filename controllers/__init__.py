"""gridtwin: controllers package."""
