"""gin configuration files of transferability studies (`spot study run --gin_file=...`)."""
