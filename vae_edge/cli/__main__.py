from vae_edge.cli import main

main()
