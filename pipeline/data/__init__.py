"""The user's data: split files (TSV), images and placeholder images. Imports nothing from the stages."""
