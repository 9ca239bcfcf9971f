"""The composition root shared by app.py and prewarm.py: settings, wiring, serving."""
