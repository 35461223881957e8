"""Datasets: scanning and validating image folders, splits, CSV labels, tf.data pipelines."""
