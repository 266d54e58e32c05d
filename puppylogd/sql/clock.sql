-- The database's clock now (not the transaction's start): compared with this host's.
SELECT clock_timestamp()
