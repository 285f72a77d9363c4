// Render every diagram of the page (<div class="mermaid">, from ```mermaid fences) with the mermaid.min.js served
// beside this file: the site loads nothing from outside itself.
mermaid.initialize({ startOnLoad: true, securityLevel: "strict" });
