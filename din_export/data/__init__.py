"""From files to encoded arrays: the spec, table and log readers, `prepare` (logs to samples), fitting the
feature schema, and the encoded splits a run trains on."""
