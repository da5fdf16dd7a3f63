"""The mathematics: threat models, objectives, the projected-gradient engine shared by
every attack and defense, and evaluation (accuracy, predictions)."""
