"""What crosses between the HTTP front and a worker process, torch-free so both import it:
framing and reply kinds (``frames``), one error codec (``errors``), the typed generate messages
(``messages``), the typed adapter and statistics operations (``control``) and the sampling
parameters with their one table of bounds (``sampling``). DJL ``Input``/``Output`` appear only
where a user's own ``model.py`` is called (``handlers.djl_wire``)."""
