"""The metric domain: judgements, evaluation, statistics, benchmark metrics and the feedback simulation."""
