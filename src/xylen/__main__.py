from xylen.cli import main

main()
