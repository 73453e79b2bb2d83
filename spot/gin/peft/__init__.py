"""gin configuration files (a package so gin can also find them via the Python path)."""
