"""BirdNET 2.4 (Cornell Lab of Ornithology and Chemnitz University of Technology): locating its
files (:mod:`streamer.birdnet.files`) and its species-range model (:mod:`streamer.birdnet.range`).
The model files are CC BY-NC-SA 4.0, non-commercial use only (:data:`files.LICENCE`)."""
