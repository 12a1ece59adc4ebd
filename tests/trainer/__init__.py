"""DPO training, export, merge, iterate."""
