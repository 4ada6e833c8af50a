<think>Three lookups are independent; the comparison needs two of them.</think>
<plan>
Task 1: Search for the current release notes | Dependencies: none
Task 2: Search for open security advisories | Dependencies: none
Task 3: List the changed modules | Dependencies: none
Task 4: Compare advisories with the changed modules | Dependencies: Task 2, Task 3
Task 5: Write the release summary | Dependencies: Task 1, Task 4
</plan>
