"""`compare`: runs against a reference on the test rows they share (paired bootstrap), as CSV, Markdown and HTML."""
