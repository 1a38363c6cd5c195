"""Speed and result benchmarks (`make bench`); they print ratios and never assert on time."""
