from medsuite.cli import main

main()
