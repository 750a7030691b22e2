"""Outputs for people and other tools: the HTML report and exports."""
