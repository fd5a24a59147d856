"""Input and output: optical and ion images, imzML, landmarks, output folders."""
