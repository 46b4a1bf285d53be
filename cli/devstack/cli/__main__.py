from devstack.cli.main import main_entry

main_entry()
