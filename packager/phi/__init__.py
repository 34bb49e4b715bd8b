"""PHI: the values a source carries, their search terms and the matcher."""
