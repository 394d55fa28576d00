from noria_testbed.node_agent.cli import main

main()
