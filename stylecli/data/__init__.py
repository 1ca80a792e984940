"""The synthetic face domain (renderer, evaluation sets) and training-data loading."""
