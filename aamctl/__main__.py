from aamctl.cli import main

main()
