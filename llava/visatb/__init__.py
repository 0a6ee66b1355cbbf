"""The VisATB workflow around training: tasks, metrics, scores, weights, subsets, toy benchmark."""
