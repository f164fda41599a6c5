"""Forward operators: CT (ODL + astra) and Gaussian compressed sensing."""
