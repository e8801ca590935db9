"""baselineFIQA package."""
