"""Analysis over tracked runs: collecting runs, paired statistics, report tables and plots."""
