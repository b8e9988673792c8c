"""``keyturn report``: the compliance report over a period of the audit (figures, charts, HTML, PDF).

``model`` computes the figures from audit records (pure); ``charts`` draws them as SVG;
``render`` puts both in one self-contained HTML file and prints it to PDF.
"""
