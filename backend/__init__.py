"""Fine-Tuning Studio web app. Importable without torch: the ML stack lives in `workers`."""
