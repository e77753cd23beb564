"""``actgen-compare``: does active generation buy more accuracy on a data set than what a user
would do without it? A frozen plan of conditions, run paired by split and seed, and its report."""
