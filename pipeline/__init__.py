"""Everything around the numerical core: configuration, cohorts, policies, Dask, Parquet, reports."""
