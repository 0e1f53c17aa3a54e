"""Tree ensembles in one flattened form, walked together: forests, XGBoost, LightGBM and
scikit-learn's HistGradientBoosting.

Each family's module reads the library's own description of its trees (XGBoost's JSON model,
LightGBM's `dump_model()`, the fitted scikit-learn arrays) into `flat.Tree`s and names the
arithmetic that turns the summed leaves into the library's answer; `flat.FlatTrees` walks
every tree of a batch at once, one gather per tree level, as the library would route each row.
"""
