"""VisATB task weights: measures, weights, the weights file, the paper's settings, printout."""
