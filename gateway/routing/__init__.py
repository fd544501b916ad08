"""Pure, synchronous routing: the route table, replica health state and replica choice. No I/O here."""
