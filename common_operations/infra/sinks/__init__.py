"""Where imports write and exports read: Postgres tables and other services over HTTP.

Import the sink modules directly (:mod:`.postgres`, :mod:`.http`); this package only names them.
"""
