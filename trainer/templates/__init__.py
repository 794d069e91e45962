"""The template bank of picked singles: polar features, matching, ranking, TF graph."""
