"""gridtwin: twin package."""
